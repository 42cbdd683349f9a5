//! `CoreTicket`: a shareable `core…` string naming a hypercore and how to reach peers that
//! have it. Filled in by the replication work.
