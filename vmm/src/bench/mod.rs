//! `securevm bench`: measurements that drive several layers together, so
//! they live above the devices and the storage they measure.

pub mod disk;
