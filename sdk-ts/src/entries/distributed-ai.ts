// The IIFE behind the one-line <script> tag (cdn/build.mjs bundles it as distributed-ai.js).
import { installFromScriptTag } from '../script-tag.js';
installFromScriptTag();
