/* bracket
   comment */ require "fileinto"; # hash
if true { fileinto "c"; } # done
