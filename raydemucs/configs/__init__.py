"""The shipped profiles (default, dev, prod, test); a package so that the wheel installs them as
`raydemucs.configs`."""
