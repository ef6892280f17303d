require "fileinto";
if exists ["X-Spam-Score", "Message-ID"] {
    fileinto "Junk";
}
