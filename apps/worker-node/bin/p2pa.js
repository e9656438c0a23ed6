#!/usr/bin/env node
import "../dist/p2pa.js";
