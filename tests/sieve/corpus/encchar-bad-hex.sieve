require ["encoded-character", "fileinto"];
fileinto "x${hex:4}y${hex:zz}z";
