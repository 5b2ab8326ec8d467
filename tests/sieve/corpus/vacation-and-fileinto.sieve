require ["vacation", "fileinto"];
fileinto "Holiday";
vacation "Away.";
