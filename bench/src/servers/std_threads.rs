//! What a message-passing user writes without a library: a blocking thread per connection
//! that reads into a buffer and writes it all back.

use std::io::{self, Read, Write};
use std::net::TcpListener;

pub(super) fn serve(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    super::announce(listener.local_addr()?);
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("std-threads: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        };
        stream.set_nodelay(true)?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; super::ECHO_BUFFER];
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}
