// The generated napi-rs loader at the package root picks the prebuilt
// binary for this platform; everything native goes through this module.
import binding = require('../index.js')

export = binding
