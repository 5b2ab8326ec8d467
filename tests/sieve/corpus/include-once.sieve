require "include";
include :once :personal "tofolder";
include :once :personal "tofolder";
