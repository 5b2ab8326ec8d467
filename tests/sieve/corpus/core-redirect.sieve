redirect "boss@example.com";
