#[aside::cached(namespace = "user", key = id, aside = cache)]
fn user(cache: &aside::Aside, id: u64) -> Result<String, std::io::Error> {
    Ok(format!("{id}"))
}

fn main() {}
