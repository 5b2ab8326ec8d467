require ["duplicate", "fileinto"];
if duplicate :header "x-priority" :handle "prio" :seconds 60 { discard; } else { fileinto "p"; }
