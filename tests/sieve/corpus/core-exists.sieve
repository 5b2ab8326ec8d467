require "fileinto";
if exists ["X-Priority", "Message-ID"] { fileinto "both"; }
if exists ["X-Priority", "X-Missing"] { fileinto "never"; }
