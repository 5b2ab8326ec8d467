require ["variables", "fileinto"];
if header :matches "subject" "*" { set "s" "${0}"; }
if string :matches "${s}" "*at *" { fileinto "t-${2}"; }
