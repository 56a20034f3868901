// export! knows the tiers request, stream and daemon (and the aliases rest, streams).
toil::export! { routes: [Api] }

fn main() {}
