require ["vacation", "reject"];
vacation "Away.";
reject "no";
