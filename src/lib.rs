pub mod device;
pub mod layout;
pub mod mountinfo;
pub mod uevent;
pub mod inventory;
pub mod verdict;
