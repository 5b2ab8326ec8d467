require ["encoded-character", "fileinto"];
if header :contains "subject" "${hex:4d 65 65}ting" { fileinto "${hex:57 6f 72 6b}"; }
