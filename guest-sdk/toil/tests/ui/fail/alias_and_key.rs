// `rest` is an alias of `request`: giving both is giving the tier twice.
toil::export! { request: [Api], rest: [Admin] }

fn main() {}
