require "include";
include :personal "nowhere";
