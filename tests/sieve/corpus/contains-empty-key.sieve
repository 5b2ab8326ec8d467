require "fileinto";
if header :contains "x-missing" "" { fileinto "missing"; }
if header :contains "subject" "" { fileinto "present"; }
