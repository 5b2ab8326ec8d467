require "vacation";
vacation :from "not valid" "x";
