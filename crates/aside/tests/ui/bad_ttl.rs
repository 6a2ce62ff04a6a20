#[aside::cached(namespace = "user", key = id, global, ttl = "ten minutes")]
async fn user(id: u64) -> Result<String, std::io::Error> {
    Ok(format!("{id}"))
}

fn main() {}
