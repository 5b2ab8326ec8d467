require "include";
include :personal "deepest";
