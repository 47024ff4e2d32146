//! DECTRIS Stream V2 (EIGER2, PILATUS4, Jungfraujoch): the messages a detector pushes
//! ([`message`]). The source kind that takes them (issue 19) is built on this decoder.

pub mod message;
