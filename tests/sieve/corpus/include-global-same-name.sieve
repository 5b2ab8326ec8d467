require "include";
include :global "tofolder";
include :personal "tofolder";
