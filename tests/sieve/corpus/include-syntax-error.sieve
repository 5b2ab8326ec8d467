require "include";
include :personal "broken";
