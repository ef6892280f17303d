if size :over "big" {
    discard;
}
