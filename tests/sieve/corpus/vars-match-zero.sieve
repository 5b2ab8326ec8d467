require ["variables", "fileinto"];
if header :matches "from" "*<*>" { set "addr" "${2}"; }
fileinto "from-${addr}";
