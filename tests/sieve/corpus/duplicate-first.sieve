require ["duplicate", "fileinto"];
if duplicate { fileinto "dup"; } else { fileinto "fresh"; }
