struct Connection;

#[aside::cached(namespace = "user", key = id, global)]
async fn user(connection: Connection, id: u64) -> Result<String, std::io::Error> {
    let _ = connection;
    Ok(format!("{id}"))
}

fn main() {}
