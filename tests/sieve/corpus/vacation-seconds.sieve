require "vacation-seconds";
vacation :seconds 7200 :handle "oof" "Back soon.";
