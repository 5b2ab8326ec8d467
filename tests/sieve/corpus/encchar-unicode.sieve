# message: encoded.eml
require ["encoded-character", "fileinto"];
if header :contains "subject" "${unicode:fc}" { fileinto "umlaut"; }
