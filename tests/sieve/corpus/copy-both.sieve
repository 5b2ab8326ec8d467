require ["copy", "fileinto"];
redirect :copy "a@example.net";
fileinto "Only";
