<?php
// A plain PHP app for the cookie-jar browser test (tests/browser/php.rs), run with
// `php -S 127.0.0.1:PORT counter.php` as the router: it counts visits in
// $_SESSION, keyed on PHP's own PHPSESSID cookie, and knows nothing of sessiongate.
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if ($path !== '/' && $path !== '/counter') {
    http_response_code(404);
    exit;
}
session_start();
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
header('Content-Type: text/html; charset=utf-8');
$via = $_SERVER['REQUEST_METHOD'] . ' ' . ($_GET['via'] ?? 'page');
?><!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>PHP counter</title><link rel="icon" href="data:,"></head>
<body>
<p>n = <span id="n"><?= $_SESSION['n'] ?></span></p>
<p>load <span id="load"><?= bin2hex(random_bytes(8)) ?></span>, <span id="via"><?= htmlspecialchars($via) ?></span></p>
<p><a id="link" href="/counter?via=link">count by link</a></p>
<form method="post" action="/counter?via=post"><input name="note" value="hello"><button id="post" type="submit">count by form POST</button></form>
</body>
</html>
