module wasmxds.test/cosignfmt

go 1.22
