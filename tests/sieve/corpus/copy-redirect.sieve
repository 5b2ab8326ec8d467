require "copy";
redirect :copy "backup@example.net";
