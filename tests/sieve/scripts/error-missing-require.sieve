fileinto "Nope";
