require "include";
include :personal "tofolder";
