"""What runs inside pods and hosts: sockets and apps on top of a Netns."""
