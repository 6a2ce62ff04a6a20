#[aside::cached(namespace = "user", key = id, aside = cache, time_to_live = "10m")]
async fn user(cache: &aside::Aside, id: u64) -> Result<String, std::io::Error> {
    Ok(format!("{id}"))
}

fn main() {}
