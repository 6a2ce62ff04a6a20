#[aside::cached(namespace = "user", key = id, global)]
async fn user(id: u64) -> String {
    format!("{id}")
}

fn main() {}
