require "fileinto";
if size :over 100 { fileinto "big"; }
if size :under 10K { fileinto "small"; }
if size :over 1M { discard; }
