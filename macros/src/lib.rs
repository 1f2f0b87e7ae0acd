//! Declaration macros of walflow. Use them through the `walflow` crate.
