//! Transmission phase, served by blocking threads of the connection's own
//! (leaders/followers, as in nbdkit): the thread holding the reader role parses
//! one request, passes the role on, runs the request and writes its reply
//! itself. Replies go out whole, possibly out of order, and a slow request
//! holds up only its own thread.
//!
//! Why not tokio here: a reader task handing each request to the blocking pool
//! and each reply to a writer task woke three threads per request, and those
//! wake-ups were over half the server's time on small requests.

mod conn;
mod io;
mod pool;
mod reply;
mod request;

pub(crate) use conn::run;
