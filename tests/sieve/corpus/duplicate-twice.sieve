require ["duplicate", "fileinto"];
if duplicate { fileinto "a"; }
if duplicate { fileinto "b"; }
