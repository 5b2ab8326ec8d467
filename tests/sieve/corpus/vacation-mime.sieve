require "vacation";
vacation :mime :addresses ["alice@example.org"] text:
Content-Type: text/plain; charset=utf-8

Away.
.
;
