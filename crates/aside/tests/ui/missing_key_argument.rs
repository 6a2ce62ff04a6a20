#[aside::cached(namespace = "user", key = user_id, aside = cache)]
async fn user(cache: &aside::Aside, id: u64) -> Result<String, std::io::Error> {
    Ok(format!("{id}"))
}

fn main() {}
