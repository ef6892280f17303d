require "vacation";
vacation :days 7 :subject "Out of office" "I am away until Monday.";
