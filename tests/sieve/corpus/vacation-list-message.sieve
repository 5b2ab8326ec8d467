# message: list.eml
require "vacation";
vacation :subject "Re" "away";
