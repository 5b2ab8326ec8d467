require "reject";
reject "busy";
discard;
