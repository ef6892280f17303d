require ["fileinto", "variables"];
set :lower :upperfirst "name" "pROJECT";
set :length "len" "${name}";
if string :is "${name}-${len}" "Project-7" {
    fileinto "Modified";
}
